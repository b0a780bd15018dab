//! Transport tests against a dummy device: the full driver init sequence, a hostile driver, and
//! save/restore.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::*;

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_MAX: u16 = 16;
const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101;

#[derive(Default)]
struct Dummy {
    acked: u64,
    queues: Vec<Queue>,
    activated: bool,
    activations: u32,
    resets: u32,
    refuse_reset: bool,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        crate::virtio::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }
    fn avail_features(&self) -> u64 {
        FEATURES
    }
    fn acked_features(&self) -> u64 {
        self.acked
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get(o..o.checked_add(data.len())?))
        else {
            return;
        };
        data.copy_from_slice(src);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get_mut(o..o.checked_add(data.len())?))
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert_eq!(ctx.queue_evts.len(), 2);
        self.queues = ctx.queues;
        self.activated = true;
        self.activations += 1;
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated
    }
    fn queues(&self) -> &[Queue] {
        &self.queues
    }
    fn reset(&mut self) -> bool {
        if self.refuse_reset {
            return false;
        }
        self.resets += 1;
        self.activated = false;
        self.queues.clear();
        true
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy {
        config: *b"cairn!!\0",
        ..Default::default()
    }));
    let t = MmioTransport::new(mem(), dev.clone()).unwrap();
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Queue `i` at a valid spot: 0x1000 * (i + 1) for the descriptors, then the rings.
fn setup_queue(t: &mut MmioTransport, i: u32, base: u64) {
    wr(t, REG_QUEUE_SEL, i);
    assert_eq!(rd(t, REG_QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    assert_eq!(rd(t, REG_QUEUE_READY), 0);
    wr(t, REG_QUEUE_NUM, 16);
    wr(t, REG_QUEUE_DESC_LOW, base as u32);
    wr(t, REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
    wr(t, REG_QUEUE_DRIVER_LOW, (base + 0x100) as u32);
    wr(t, REG_QUEUE_DRIVER_HIGH, ((base + 0x100) >> 32) as u32);
    wr(t, REG_QUEUE_DEVICE_LOW, (base + 0x200) as u32);
    wr(t, REG_QUEUE_DEVICE_HIGH, ((base + 0x200) >> 32) as u32);
    wr(t, REG_QUEUE_READY, 1);
    assert_eq!(rd(t, REG_QUEUE_READY), 1);
}

/// ACK -> DRIVER -> features -> FEATURES_OK.
fn negotiate(t: &mut MmioTransport) {
    wr(t, REG_STATUS, ACKNOWLEDGE);
    wr(t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    wr(t, REG_DEVICE_FEATURES_SEL, 0);
    let lo = rd(t, REG_DEVICE_FEATURES);
    wr(t, REG_DEVICE_FEATURES_SEL, 1);
    let hi = rd(t, REG_DEVICE_FEATURES);
    assert_eq!((u64::from(hi) << 32) | u64::from(lo), FEATURES);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, lo);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, hi);
    wr(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(t, REG_STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

fn bring_up(t: &mut MmioTransport) {
    negotiate(t);
    setup_queue(t, 0, 0x1000);
    setup_queue(t, 1, 0x2000);
    wr(
        t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
}

#[test]
fn full_init_sequence() {
    let (mut t, dev) = setup();
    assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut t, REG_VERSION), 2);
    assert_eq!(rd(&mut t, REG_DEVICE_ID), crate::virtio::device_type::RNG);
    assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
    assert_eq!(rd(&mut t, REG_STATUS), 0);

    bring_up(&mut t);
    assert_eq!(
        rd(&mut t, REG_STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    {
        let d = dev.lock().unwrap();
        assert!(d.activated);
        assert_eq!(d.acked, FEATURES);
        assert_eq!(d.queues.len(), 2);
        assert_eq!(d.queues[1].desc_table(), 0x2000);
        assert_eq!(d.queues[1].avail_ring(), 0x2100);
        assert_eq!(d.queues[1].used_ring(), 0x2200);
        assert!(d.queues[0].event_idx_enabled(), "EVENT_IDX was negotiated");
    }
    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, REG_QUEUE_SEL, 0);
    wr(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);

    // Notify falls back to the eventfd when KVM did not catch it.
    wr(&mut t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    assert!(t.queue_evts()[0].read().is_err());

    // Interrupts: status, then ack.
    t.interrupt().trigger(IrqKind::Vring).unwrap();
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING_BIT);
    assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
    wr(&mut t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING_BIT);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);

    // Config space, any width.
    let mut b = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut b);
    assert_eq!(&b, b"cairn!!\0");
    let mut b = [0u8; 2];
    t.read(CONFIG_SPACE_OFFSET + 5, &mut b);
    assert_eq!(&b, b"!!");
    t.write(CONFIG_SPACE_OFFSET + 7, b"?");
    let mut b = [0u8; 1];
    t.read(CONFIG_SPACE_OFFSET + 7, &mut b);
    assert_eq!(&b, b"?");
    // Past the device's config: zeros.
    let mut b = [9u8; 4];
    t.read(CONFIG_SPACE_OFFSET + 6, &mut b);
    assert_eq!(b, [0; 4]);

    t.notify_config_change().unwrap();
    assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), 1);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG_BIT);

    // Reset.
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
    wr(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    let d = dev.lock().unwrap();
    assert!(!d.activated);
    assert_eq!(d.resets, 1);
    assert_eq!(d.acked, 0);
    drop(d);

    // And the driver can bring it up again.
    bring_up(&mut t);
    assert_eq!(dev.lock().unwrap().activations, 2);
}

const VIRTIO_MMIO_INT_VRING_BIT: u32 = crate::virtio::VIRTIO_MMIO_INT_VRING;
const VIRTIO_MMIO_INT_CONFIG_BIT: u32 = crate::virtio::VIRTIO_MMIO_INT_CONFIG;

#[test]
fn status_steps_out_of_order_are_ignored() {
    let (mut t, dev) = setup();
    wr(&mut t, REG_STATUS, DRIVER);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    wr(
        &mut t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    wr(&mut t, REG_STATUS, ACKNOWLEDGE);
    wr(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(rd(&mut t, REG_STATUS), ACKNOWLEDGE);
    // Features before DRIVER are ignored.
    wr(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(dev.lock().unwrap().acked, 0);
    wr(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    // Only offered features stick; unknown pages are ignored.
    wr(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(dev.lock().unwrap().acked, FEATURES & 0xffff_ffff);
    wr(&mut t, REG_DRIVER_FEATURES_SEL, 7);
    wr(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(dev.lock().unwrap().acked, FEATURES & 0xffff_ffff);
    // FEATURES_OK without VERSION_1 is refused.
    wr(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // Dropping a bit is not allowed either.
    wr(&mut t, REG_STATUS, DRIVER);
    assert_eq!(rd(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // Queue writes before FEATURES_OK are ignored.
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    // FAILED sticks until reset.
    wr(&mut t, REG_STATUS, FAILED);
    assert_eq!(rd(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    wr(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert!(!dev.lock().unwrap().activated);
}

#[test]
fn activation_with_unready_queue_needs_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1000);
    // Queue 1 left unready.
    wr(
        &mut t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(rd(&mut t, REG_STATUS) & DEVICE_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().activated);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG_BIT);
    // Further steps are ignored until the driver resets.
    wr(
        &mut t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(!dev.lock().unwrap().activated);
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    bring_up(&mut t);
    assert!(dev.lock().unwrap().activated);
}

#[test]
fn activation_with_queue_outside_ram_needs_reset() {
    for base in [MEM_SIZE - 0x100, MEM_SIZE, 0xffff_ffff_ffff_f000] {
        let (mut t, dev) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, base);
        wr(
            &mut t,
            REG_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_ne!(
            rd(&mut t, REG_STATUS) & DEVICE_NEEDS_RESET,
            0,
            "base {base:#x}"
        );
        assert!(!dev.lock().unwrap().activated);
    }
}

#[test]
fn misaligned_queue_addresses_and_bad_sizes_are_refused() {
    let (mut t, _dev) = setup();
    negotiate(&mut t);
    wr(&mut t, REG_QUEUE_SEL, 0);
    wr(&mut t, REG_QUEUE_NUM, 3);
    wr(&mut t, REG_QUEUE_NUM, 0);
    wr(&mut t, REG_QUEUE_NUM, 32);
    wr(&mut t, REG_QUEUE_NUM, 0x1_0010);
    wr(&mut t, REG_QUEUE_DESC_LOW, 0x1001);
    wr(&mut t, REG_QUEUE_DRIVER_LOW, 0x1101);
    wr(&mut t, REG_QUEUE_DEVICE_LOW, 0x1202);
    let q = &t.queues[0];
    assert_eq!(q.size(), QUEUE_MAX);
    assert_eq!(q.desc_table(), 0);
    assert_eq!(q.avail_ring(), 0);
    assert_eq!(q.used_ring(), 0);
}

#[test]
fn hostile_register_accesses_never_panic() {
    let (mut t, _dev) = setup();
    // Wrong widths and misaligned offsets read as zero.
    let mut b = [0xaau8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xaau8; 4];
    t.read(REG_MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    let mut b = [0xaau8; 8];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0; 8]);
    t.read(0, &mut []);
    // Unknown and write-only registers read as zero; SHM lengths say "no region".
    assert_eq!(rd(&mut t, 0x0c), VENDOR_ID);
    assert_eq!(rd(&mut t, 0x018), 0);
    assert_eq!(rd(&mut t, REG_QUEUE_NOTIFY), 0);
    assert_eq!(rd(&mut t, REG_SHM_LEN_LOW), u32::MAX);
    // Queue select out of range.
    wr(&mut t, REG_QUEUE_SEL, 99);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    wr(&mut t, REG_QUEUE_NOTIFY, 99);
    wr(&mut t, REG_QUEUE_NOTIFY, u32::MAX);
    // Wrong-width writes are ignored.
    t.write(REG_STATUS, &[1]);
    t.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    // Config writes before DRIVER are ignored; huge offsets are harmless.
    t.write(CONFIG_SPACE_OFFSET, b"x");
    t.write(u64::MAX, b"x");
    let mut b = [0u8; 4];
    t.read(u64::MAX - 1, &mut b);
    t.read(0xfff, &mut b);

    // A pseudo-random storm of register writes (including status) never panics, and the
    // transport still comes up afterwards.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x >> 8) % 0x120;
        let len = [1usize, 2, 4, 8][(x & 3) as usize];
        let mut data = [0u8; 8];
        data.copy_from_slice(&x.to_le_bytes());
        if x & 0x10 != 0 {
            t.write(off, &data[..len]);
        } else {
            t.read(off, &mut data[..len]);
        }
    }
    wr(&mut t, REG_STATUS, 0);
    bring_up(&mut t);
    assert_eq!(rd(&mut t, REG_STATUS) & DRIVER_OK, DRIVER_OK);
}

#[test]
fn unresettable_device_reports_needs_reset() {
    let (mut t, dev) = setup();
    bring_up(&mut t);
    dev.lock().unwrap().refuse_reset = true;
    wr(&mut t, REG_STATUS, 0);
    assert_ne!(rd(&mut t, REG_STATUS) & DEVICE_NEEDS_RESET, 0);
    assert!(dev.lock().unwrap().activated);
}

#[test]
fn persist_round_trip_reactivates_device() {
    let (mut t, dev) = setup();
    bring_up(&mut t);
    // The device made progress on its own copy of queue 0.
    dev.lock().unwrap().queues[0].set_next_avail(3);
    dev.lock().unwrap().queues[0].set_next_used(3);
    t.interrupt().trigger(IrqKind::Vring).unwrap();
    wr(&mut t, REG_QUEUE_SEL, 1);
    let state = t.save().unwrap();
    assert_eq!(state.queues[0].next_avail, 3);
    assert_eq!(state.queue_select, 1);
    assert_eq!(state.acked_features, FEATURES);

    let fresh = Arc::new(Mutex::new(Dummy::default()));
    let restored = MmioTransport::restore(
        MmioTransportConstructorArgs {
            mem: mem(),
            device: fresh.clone(),
        },
        &state,
    )
    .unwrap();
    assert_eq!(restored.save().unwrap(), state);
    let d = fresh.lock().unwrap();
    assert!(d.activated);
    assert_eq!(d.queues[0].next_avail(), 3);
    assert_eq!(d.acked, FEATURES);
    assert_eq!(restored.interrupt().status(), VIRTIO_MMIO_INT_VRING_BIT);
}

#[test]
fn persist_before_driver_ok_does_not_activate() {
    let (mut t, _dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1000);
    let state = t.save().unwrap();
    let fresh = Arc::new(Mutex::new(Dummy::default()));
    let mut restored = MmioTransport::restore(
        MmioTransportConstructorArgs {
            mem: mem(),
            device: fresh.clone(),
        },
        &state,
    )
    .unwrap();
    assert_eq!(restored.save().unwrap(), state);
    assert!(!fresh.lock().unwrap().activated);
    // The driver can finish the sequence on the restored transport.
    setup_queue(&mut restored, 1, 0x2000);
    wr(
        &mut restored,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(fresh.lock().unwrap().activated);
}

#[test]
fn restore_rejects_inconsistent_state() {
    let (t, _dev) = setup();
    let good = t.save().unwrap();
    let args = || MmioTransportConstructorArgs {
        mem: mem(),
        device: Arc::new(Mutex::new(Dummy::default())),
    };
    let mut bad = good.clone();
    bad.queues.pop();
    assert!(matches!(
        MmioTransport::restore(args(), &bad),
        Err(MmioError::QueueCount {
            saved: 1,
            device: 2
        })
    ));
    let mut bad = good.clone();
    bad.queues[1].size = 3;
    assert!(matches!(
        MmioTransport::restore(args(), &bad),
        Err(MmioError::InvalidQueue(1))
    ));
    let mut bad = good.clone();
    bad.queues[0].max_size = 256;
    assert!(matches!(
        MmioTransport::restore(args(), &bad),
        Err(MmioError::InvalidQueue(0))
    ));
    let mut bad = good;
    bad.queues[0].desc_table = 0x1001;
    assert!(matches!(
        MmioTransport::restore(args(), &bad),
        Err(MmioError::InvalidQueue(0))
    ));
}

#[test]
fn cmdline_entry_format() {
    assert_eq!(
        cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn invalid_device_queue_size_is_an_error() {
    struct Bad;
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[100]
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn acked_features(&self) -> u64 {
            0
        }
        fn set_acked_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateContext) -> Result<(), ActivateError> {
            Ok(())
        }
        fn is_activated(&self) -> bool {
            false
        }
        fn queues(&self) -> &[Queue] {
            &[]
        }
        fn reset(&mut self) -> bool {
            true
        }
    }
    assert!(matches!(
        MmioTransport::new(mem(), Arc::new(Mutex::new(Bad))),
        Err(MmioError::QueueMaxSize {
            index: 0,
            max_size: 100
        })
    ));
}
