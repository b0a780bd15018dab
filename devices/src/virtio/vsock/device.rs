//! The virtio-vsock device model.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{self, MAX_PKT_DATA};
use super::{EVENT_TRANSPORT_RESET, EVQ_INDEX, QUEUE_SIZE, RX_INDEX, TX_INDEX};
use crate::virtio::activation::QueueEvents;
use crate::virtio::{
    device_type, ActivateContext, ActivateError, IrqKind, IrqTrigger, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;

/// How the vsock device is configured (Firecracker's `vsock` body).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub guest_cid: u32,
    /// Where host clients connect; guest connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Check the configuration without touching the host.
    pub fn validate(&self) -> Result<(), VsockError> {
        if self.guest_cid < 3 {
            return Err(VsockError::InvalidConfig(format!(
                "guest_cid {} is reserved (must be 3 or more)",
                self.guest_cid
            )));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(VsockError::InvalidConfig("uds_path is empty".into()));
        }
        // sun_path holds 108 bytes with the NUL; `_<port>` adds up to 11 more.
        if self.uds_path.as_os_str().len() > 107 - 11 {
            return Err(VsockError::InvalidConfig(format!(
                "uds_path {} is too long for a Unix socket",
                self.uds_path.display()
            )));
        }
        Ok(())
    }
}

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The configuration is not valid.
    #[error("invalid vsock configuration: {0}")]
    InvalidConfig(String),
    /// The listening socket could not be set up.
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// The operation needs an activated device.
    #[error("the device is not activated")]
    NotActivated,
    /// The guest has posted no event buffer.
    #[error("no buffer on the event queue")]
    NoEventBuffer,
}

/// What the device holds between activation and reset.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) queues: Vec<Queue>,
    pub(crate) queue_evts: Vec<EventFd>,
    pub(crate) interrupt: Arc<IrqTrigger>,
}

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    pub(crate) config: VsockConfig,
    pub(crate) muxer: Muxer,
    pub(crate) acked_features: u64,
    pub(crate) activate_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// The queue eventfds as registered with the event loop.
    pub(crate) registered: QueueEvents,
    /// Whether the muxer's epoll fd is registered with the event loop.
    pub(crate) muxer_registered: bool,
    /// A transport reset the guest has not handled yet. Packets for the guest wait until it has:
    /// a driver handles the reset event asynchronously, so a host connection delivered earlier
    /// could be accepted and then dropped with the stale ones. Linux's driver re-posts the event
    /// buffer and kicks the event queue once it has reset its sockets; that kick ends the wait.
    pub(crate) reset_unacked: bool,
    scratch: Box<[u8]>,
}

impl Vsock {
    /// Validate `config` and start listening on its `uds_path`.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        let muxer = Muxer::new(u64::from(config.guest_cid), &config.uds_path)
            .map_err(|e| VsockError::Listen(config.uds_path.clone(), e))?;
        Ok(Self {
            config,
            muxer,
            acked_features: 0,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            active: None,
            registered: QueueEvents::default(),
            muxer_registered: false,
            reset_unacked: false,
            scratch: vec![0u8; MAX_PKT_DATA as usize].into_boxed_slice(),
        })
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// The eventfd the device signals when it was activated, reset or restored.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The queue eventfds of the active device (empty when not activated).
    pub(crate) fn queue_evts(&self) -> &[EventFd] {
        self.active
            .as_ref()
            .map_or(&[], |a| a.queue_evts.as_slice())
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Handle the host sockets' events, then move what they produced to the guest.
    pub fn process_host_events(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }

    /// Whether packets for the guest wait for it to handle a transport reset.
    pub fn awaits_reset_ack(&self) -> bool {
        self.reset_unacked
    }

    /// The guest kicked the event queue: it handled the transport reset (if one was pending)
    /// and posted its event buffers again. Held packets flow. Returns whether a reset was pending.
    pub fn process_event_queue(&mut self) -> bool {
        if !std::mem::take(&mut self.reset_unacked) {
            return false;
        }
        self.process_rx();
        self.process_tx();
        true
    }

    /// Fill the guest's rx buffers with pending packets. Returns whether any buffer was used.
    pub fn process_rx(&mut self) -> bool {
        if self.reset_unacked {
            return false;
        }
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        let rxq = &mut active.queues[RX_INDEX];
        while self.muxer.has_pending_rx() {
            let Some(chain) = rxq.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let used_len = match packet::rx_data_capacity(&active.mem, chain.clone()) {
                Ok(cap) => {
                    let Some(hdr) = self.muxer.recv_pkt(&mut self.scratch[..cap]) else {
                        if cap > 0 {
                            // Nothing after all (a socket had no data): give the buffer back.
                            rxq.go_to_previous_position();
                            break;
                        }
                        // A header-only buffer cannot carry the data that is waiting: return it
                        // unused rather than let it block the queue.
                        if let Err(e) = rxq.add_used(&active.mem, head, 0) {
                            tracing::warn!("vsock: cannot return an rx buffer: {e}");
                        }
                        used_any = true;
                        continue;
                    };
                    let data = &self.scratch[..hdr.len as usize];
                    match packet::write_rx_packet(&active.mem, chain, &hdr, data) {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!("vsock: cannot write a packet to the guest: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: unusable rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = rxq.add_used(&active.mem, head, used_len) {
                tracing::warn!("vsock: cannot return an rx buffer: {e}");
            }
            used_any = true;
        }
        if used_any {
            notify(active, RX_INDEX);
        }
        used_any
    }

    /// Hand the guest's packets to the muxer. Malformed packets are dropped. Returns whether any
    /// buffer was used. Packets the guest sent may have produced replies: rx is processed too.
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        let txq = &mut active.queues[TX_INDEX];
        loop {
            if self.muxer.tx_backlogged() {
                // Replies cannot be queued: leave the rest until rx buffers drain the backlog.
                break;
            }
            let Some(chain) = txq.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            match packet::read_tx_packet(&active.mem, chain, &mut self.scratch) {
                Ok(hdr) => {
                    let data = &self.scratch[..hdr.len as usize];
                    self.muxer.send_pkt(&hdr, data);
                }
                Err(e) => tracing::debug!("vsock: dropping a malformed tx packet: {e}"),
            }
            if let Err(e) = txq.add_used(&active.mem, head, 0) {
                tracing::warn!("vsock: cannot return a tx buffer: {e}");
            }
            used_any = true;
        }
        if used_any {
            notify(active, TX_INDEX);
        }
        self.process_rx();
        used_any
    }

    /// Tell the guest that every connection is gone (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`). The VMM
    /// calls this after restoring a snapshot, since host connections were not saved. Packets for
    /// the guest then wait until it kicks the event queue ([`Vsock::process_event_queue`]).
    pub fn send_transport_reset(&mut self) -> Result<(), VsockError> {
        self.muxer.reset();
        let active = self.active.as_mut().ok_or(VsockError::NotActivated)?;
        let evq = &mut active.queues[EVQ_INDEX];
        let chain = evq
            .pop_descriptor_chain(&active.mem)
            .ok_or(VsockError::NoEventBuffer)?;
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let mut len = 0u32;
        if let Some(desc) = chain.clone().next() {
            if desc.is_write_only()
                && desc.len() as usize >= event.len()
                && active.mem.write_slice(&event, desc.addr()).is_ok()
            {
                len = event.len() as u32;
            }
        }
        if let Err(e) = evq.add_used(&active.mem, head, len) {
            tracing::warn!("vsock: cannot return an event buffer: {e}");
        }
        notify(active, EVQ_INDEX);
        if len == 0 {
            return Err(VsockError::NoEventBuffer);
        }
        self.reset_unacked = true;
        Ok(())
    }
}

/// Raise the vring interrupt if the driver did not suppress it.
fn notify(active: &mut Active, index: usize) {
    let needed = active.queues[index]
        .needs_notification(&active.mem)
        .unwrap_or(true);
    if needed {
        if let Err(e) = active.interrupt.trigger(IrqKind::Vring) {
            tracing::warn!("vsock: cannot raise the interrupt: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cid = u64::from(self.config.guest_cid).to_le_bytes();
        crate::virtio::read_config_bytes(&cid, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
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
                tracing::warn!("vsock: cannot signal the reset: {e}");
            }
        }
        self.muxer.reset();
        self.reset_unacked = false;
        self.acked_features = 0;
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::super::packet::{Op, VsockHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
    use super::*;

    pub(crate) const GUEST_CID: u32 = 3;
    const F_WRITE: u16 = 2;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    /// The guest's side of the device: mock queues, buffers, and the device itself.
    pub(crate) struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        qs: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
        next_desc: [u16; 3],
        seen_used: [u16; 3],
        next_buf: u64,
        /// Buffer address of each descriptor head, per queue.
        heads: [HashMap<u16, u64>; 3],
        pub(crate) vsock: Vsock,
        pub(crate) irq: Arc<IrqTrigger>,
        pub(crate) uds: PathBuf,
    }

    impl<'a> Driver<'a> {
        pub(crate) fn new(mem: &'a GuestMemoryMmap, dir: &Path) -> Self {
            let uds = dir.join("v.sock");
            let mut vsock = Vsock::new(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: uds.clone(),
            })
            .unwrap();
            let qs: Vec<_> = (0..3u64)
                .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x4000), 256))
                .collect();
            let irq = Arc::new(IrqTrigger::new().unwrap());
            vsock.set_acked_features(vsock.avail_features());
            vsock
                .activate(ActivateContext {
                    mem: mem.clone(),
                    queues: qs.iter().map(|q| q.create_queue().unwrap()).collect(),
                    queue_evts: (0..3).map(|_| EventFd::new(0).unwrap()).collect(),
                    interrupt: irq.clone(),
                })
                .unwrap();
            Self {
                mem,
                qs,
                next_desc: [0; 3],
                seen_used: [0; 3],
                next_buf: 0x10_0000,
                heads: Default::default(),
                vsock,
                irq,
                uds,
            }
        }

        fn alloc(&mut self, len: u64) -> u64 {
            let addr = self.next_buf;
            self.next_buf += (len + 0xfff) & !0xfff;
            addr
        }

        /// Post one chain on queue `q`: (addr, len, flags) descriptors.
        pub(crate) fn add_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) {
            let base = self.next_desc[q];
            let raw: Vec<_> = descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, flags))| {
                    let last = i + 1 == descs.len();
                    let flags = if last { flags } else { flags | 1 };
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1))
                })
                .collect();
            self.qs[q].add_desc_chains(&raw, base).unwrap();
            self.heads[q].insert(base, descs[0].0);
            self.next_desc[q] += descs.len() as u16;
        }

        /// Post `n` rx buffers of one descriptor each, with room for `data` bytes.
        pub(crate) fn add_rx_buffers(&mut self, n: usize, data: u32) {
            for _ in 0..n {
                let len = HDR_LEN as u32 + data;
                let addr = self.alloc(u64::from(len));
                self.add_chain(RX_INDEX, &[(addr, len, F_WRITE)]);
            }
        }

        /// A header from the guest to the host.
        pub(crate) fn hdr(&self, src_port: u32, dst_port: u32, op: Op) -> VsockHeader {
            VsockHeader {
                src_cid: u64::from(GUEST_CID),
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: 0,
                type_: TYPE_STREAM,
                op: op as u16,
                flags: 0,
                buf_alloc: 64 * 1024,
                fwd_cnt: 0,
            }
        }

        /// Send one packet (one readable descriptor) and let the device process the tx queue.
        pub(crate) fn send(&mut self, hdr: VsockHeader, data: &[u8]) {
            let mut hdr = hdr;
            hdr.len = data.len() as u32;
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(data);
            self.send_raw(&[bytes]);
        }

        /// Send a chain whose descriptors hold `parts`, then process the tx queue.
        pub(crate) fn send_raw(&mut self, parts: &[Vec<u8>]) {
            let mut descs = Vec::new();
            for p in parts {
                let addr = self.alloc(p.len() as u64 + 1);
                self.mem.write_slice(p, GuestAddress(addr)).unwrap();
                descs.push((addr, p.len() as u32, 0));
            }
            self.add_chain(TX_INDEX, &descs);
            self.vsock.process_tx();
        }

        /// New used entries of queue `q`: (buffer address, used length).
        pub(crate) fn used(&mut self, q: usize) -> Vec<(u64, u32)> {
            let idx = self.qs[q].used().idx().load();
            let mut out = Vec::new();
            while self.seen_used[q] != idx {
                let e = self.qs[q]
                    .used()
                    .ring()
                    .ref_at(usize::from(self.seen_used[q]) % 256)
                    .unwrap()
                    .load();
                out.push((self.heads[q][&(e.id() as u16)], e.len()));
                self.seen_used[q] = self.seen_used[q].wrapping_add(1);
            }
            out
        }

        /// Packets the device put in rx buffers since the last call.
        pub(crate) fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
            self.used(RX_INDEX)
                .into_iter()
                .filter(|&(_, len)| len != 0) // buffers returned unused
                .map(|(addr, len)| {
                    assert!(len as usize >= HDR_LEN, "rx used length {len}");
                    let mut buf = vec![0u8; len as usize];
                    self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                    let head: [u8; HDR_LEN] = buf[..HDR_LEN].try_into().unwrap();
                    let hdr = VsockHeader::from_bytes(&head);
                    assert_eq!(hdr.len as usize, buf.len() - HDR_LEN);
                    (hdr, buf[HDR_LEN..].to_vec())
                })
                .collect()
        }

        /// Let host sockets make progress until `done` holds on what the guest received.
        pub(crate) fn pump_until(
            &mut self,
            mut done: impl FnMut(&[(VsockHeader, Vec<u8>)]) -> bool,
        ) -> Vec<(VsockHeader, Vec<u8>)> {
            let mut got = Vec::new();
            for _ in 0..400 {
                self.vsock.process_host_events();
                got.extend(self.recv());
                if done(&got) {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("condition not reached; received {got:?}");
        }
    }

    #[test]
    fn config_validation_and_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = VsockConfig {
            guest_cid: 2,
            uds_path: dir.path().join("v.sock"),
        };
        assert!(matches!(
            Vsock::new(c.clone()),
            Err(VsockError::InvalidConfig(_))
        ));
        c.guest_cid = 0x0102_0304;
        let v = Vsock::new(c.clone()).unwrap();
        assert_eq!(v.device_type(), device_type::VSOCK);
        assert_eq!(v.queue_max_sizes().len(), 3);
        let mut cid = [0xffu8; 10];
        v.read_config(0, &mut cid);
        assert_eq!(cid, [4, 3, 2, 1, 0, 0, 0, 0, 0xff, 0xff]);
        let mut hi = [0xffu8; 4];
        v.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        // A second device cannot take a live socket path.
        assert!(matches!(Vsock::new(c.clone()), Err(VsockError::Listen(..))));
        drop(v);
        assert!(!c.uds_path.exists(), "the socket file is removed on drop");
        c.uds_path = PathBuf::from("x".repeat(100));
        assert!(c.validate().is_err());
        let json = r#"{"guest_cid":3,"uds_path":"/tmp/v.sock","extra":1}"#;
        assert!(serde_json::from_str::<VsockConfig>(json).is_err());
    }

    #[test]
    fn stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l); // the file stays, nobody listens
        let v = Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: path.clone(),
        });
        assert!(v.is_ok());
    }

    #[test]
    fn transport_reset_uses_the_event_queue() {
        let mem = mem();
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driver::new(&mem, dir.path());
        assert!(matches!(
            d.vsock.send_transport_reset(),
            Err(VsockError::NoEventBuffer)
        ));
        d.mem
            .write_slice(&[0xffu8; 8], GuestAddress(0x50_0000))
            .unwrap();
        d.add_chain(EVQ_INDEX, &[(0x50_0000, 8, F_WRITE)]);
        d.vsock.send_transport_reset().unwrap();
        let used = d.used(EVQ_INDEX);
        assert_eq!(used, vec![(0x50_0000, 4)]);
        let mut ev = [0u8; 4];
        d.mem.read_slice(&mut ev, GuestAddress(0x50_0000)).unwrap();
        assert_eq!(u32::from_le_bytes(ev), EVENT_TRANSPORT_RESET);
        assert_ne!(d.irq.status() & crate::virtio::VIRTIO_MMIO_INT_VRING, 0);
    }

    #[test]
    fn packets_for_the_guest_wait_until_it_handles_a_transport_reset() {
        use std::io::Write;
        let mem = mem();
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driver::new(&mem, dir.path());
        d.add_rx_buffers(4, 4096);
        d.add_chain(EVQ_INDEX, &[(0x50_0000, 8, F_WRITE)]);
        assert!(!d.vsock.process_event_queue(), "no reset is pending yet");
        d.vsock.send_transport_reset().unwrap();
        assert!(d.vsock.awaits_reset_ack());

        // A host client connects while the guest has not yet reset its sockets.
        let mut client = std::os::unix::net::UnixStream::connect(&d.uds).unwrap();
        client.write_all(b"CONNECT 77\n").unwrap();
        for _ in 0..20 {
            d.vsock.process_host_events();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(d.recv().is_empty(), "the request waits for the guest");
        assert_eq!(d.vsock.connection_count(), 1, "but the connection is kept");

        // The guest kicks the event queue once it has handled the reset: the request flows.
        assert!(d.vsock.process_event_queue());
        assert!(!d.vsock.awaits_reset_ack());
        let got = d.pump_until(|g| !g.is_empty());
        assert_eq!(got[0].0.op(), Some(Op::Request));
        assert_eq!(got[0].0.dst_port, 77);
        assert!(
            !d.vsock.process_event_queue(),
            "a later kick changes nothing"
        );

        // A device reset forgets an unacknowledged transport reset.
        d.add_chain(EVQ_INDEX, &[(0x51_0000, 8, F_WRITE)]);
        d.vsock.send_transport_reset().unwrap();
        assert!(d.vsock.reset());
        assert!(!d.vsock.awaits_reset_ack());
    }

    #[test]
    fn reset_deactivates() {
        let mem = mem();
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driver::new(&mem, dir.path());
        assert!(d.vsock.reset());
        assert!(!d.vsock.is_activated());
        assert!(d.vsock.queues().is_empty());
        assert!(!d.vsock.process_tx());
        assert!(matches!(
            d.vsock.send_transport_reset(),
            Err(VsockError::NotActivated)
        ));
    }
}
