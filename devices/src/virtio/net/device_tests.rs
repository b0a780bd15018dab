//! Tests of the virtio-net device's RX and TX paths with an in-memory backend.

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

#[test]
fn mmds_frames_are_answered_by_the_device_not_the_tap() {
    use crate::mmds::pdu::{write_arp_reply, write_ethernet, ETHERTYPE_ARP};
    use crate::mmds::{Mmds, MmdsStack, DEFAULT_MMDS_IPV4};

    let mem = mem();
    let mut fx = Fixture::new(&mem);
    let store = Arc::new(Mutex::new(Mmds::new(1024).unwrap()));
    fx.net
        .set_mmds(Some(MmdsStack::new(DEFAULT_MMDS_IPV4, store)));
    assert!(fx.net.mmds().is_some());
    let guest_mac = config().guest_mac.unwrap();
    let arp = |tpa: [u8; 4]| {
        let mut f = vec![0u8; VNET_HDR_LEN + 42];
        write_ethernet(&mut f[VNET_HDR_LEN..], [0xff; 6], guest_mac, ETHERTYPE_ARP).unwrap();
        write_arp_reply(
            &mut f[VNET_HDR_LEN + 14..],
            guest_mac,
            [172, 16, 0, 2].into(),
            [0; 6],
            tpa.into(),
        )
        .unwrap();
        f[VNET_HDR_LEN + 21] = 1; // request
        f
    };
    // One ARP for MMDS, one for the gateway.
    let for_mmds = arp([169, 254, 169, 254]);
    let for_tap = arp([172, 16, 0, 1]);
    fx.mem
        .write_slice(&for_mmds, GuestAddress(0x10_0000))
        .unwrap();
    fx.mem
        .write_slice(&for_tap, GuestAddress(0x11_0000))
        .unwrap();
    fx.add_chain(TX_INDEX, &[(0x10_0000, for_mmds.len() as u32, 0)]);
    fx.add_chain(TX_INDEX, &[(0x11_0000, for_tap.len() as u32, 0)]);
    // No rx buffer yet: the answer waits.
    assert!(fx.net.process_tx());
    assert_eq!(fx.used_idx(TX_INDEX), 2);
    assert_eq!(fx.backend.inner.lock().unwrap().from_guest, vec![for_tap]);
    assert_eq!(fx.net.stats().tx_frames, 1);
    assert_eq!(fx.used_idx(RX_INDEX), 0);

    fx.add_chain(RX_INDEX, &[(0x20_0000, 2048, F_WRITE)]);
    assert!(fx.net.process_rx());
    assert_eq!(fx.used(RX_INDEX, 0), (0, (VNET_HDR_LEN + 42) as u32));
    let mut got = vec![0u8; VNET_HDR_LEN + 42];
    fx.mem
        .read_slice(&mut got, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&got[..10], &[0u8; 10], "an empty vnet header");
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    let reply = &got[VNET_HDR_LEN..];
    assert_eq!(&reply[..6], &guest_mac);
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[28..32], &[169, 254, 169, 254]);
    assert_eq!(fx.net.mmds().unwrap().stats().tx_frames, 1);

    // Without MMDS the same frame goes to the tap.
    fx.net.set_mmds(None);
    fx.mem
        .write_slice(&for_mmds, GuestAddress(0x10_0000))
        .unwrap();
    fx.add_chain(TX_INDEX, &[(0x10_0000, for_mmds.len() as u32, 0)]);
    assert!(fx.net.process_tx());
    assert_eq!(fx.backend.inner.lock().unwrap().from_guest.len(), 2);
}
