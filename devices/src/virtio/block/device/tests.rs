//! virtio-blk device tests on a `MockSplitQueue`: every request type, every kind of malformed
//! chain (each followed by a valid request the device must still serve), notifications, the
//! event handler, and save/restore.

use std::sync::{Arc, Mutex};

use cairn_snapshot::Persist;
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::block::backend::MemDisk;
use crate::virtio::block::persist::BlockConstructorArgs;
use crate::virtio::block::{req_status, req_type, SECTOR_SIZE};
use crate::virtio::test_utils::*;

const DISK_SECTORS: u64 = 64;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;

fn block(read_only: bool) -> Block {
    let mut disk = MemDisk::new((DISK_SECTORS * SECTOR_SIZE) as usize);
    for (i, b) in disk.data.iter_mut().enumerate() {
        *b = (i / SECTOR_SIZE as usize) as u8;
    }
    let config = BlockConfig {
        drive_id: "cairn-root-drive-with-long-id".into(),
        path: "/dev/null".into(),
        read_only,
    };
    Block::new(config, Box::new(disk)).unwrap()
}

/// Write a request header for `slot` (each slot has its own header and status byte).
fn header(mem: &GuestMemoryMmap, slot: u64, type_: u32, sector: u64) -> (u64, u64) {
    let hdr = HDR + slot * 0x100;
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&type_.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
    let status = STATUS + slot;
    mem.write_slice(&[0xff], GuestAddress(status)).unwrap();
    (hdr, status)
}

fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj::<u8>(GuestAddress(addr)).unwrap()
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    dev: Block,
    irq: Arc<crate::virtio::IrqTrigger>,
    next_desc: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, read_only: bool, event_idx: bool) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut dev = block(read_only);
        let (ctx, _evt, irq) = activate_ctx(mem, &vq, event_idx);
        dev.activate(ctx).unwrap();
        Self {
            mem,
            vq,
            dev,
            irq,
            next_desc: 0,
        }
    }

    /// Queue a chain made of `parts`.
    fn push(&mut self, parts: &[(u64, u32, u16)]) {
        let descs = chain(self.next_desc, parts);
        self.vq.add_desc_chains(&descs, self.next_desc).unwrap();
        self.next_desc += parts.len() as u16;
    }

    /// Queue raw descriptors (for hand-made broken chains); the first is the head.
    fn push_raw(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) {
        self.vq.add_desc_chains(descs, self.next_desc).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// A valid 1-sector read of `sector` into `DATA + slot * 0x1000`; returns the status addr.
    fn push_read(&mut self, slot: u64, sector: u64) -> u64 {
        let (hdr, status) = header(self.mem, slot, req_type::IN, sector);
        self.push(&[(hdr, 16, R), (DATA + slot * 0x1000, 512, W), (status, 1, W)]);
        status
    }
}

#[test]
fn features_and_config_space() {
    let dev = block(false);
    let f = dev.avail_features();
    assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(f & (1 << features::FLUSH), 0);
    assert_ne!(f & (1 << features::DISCARD), 0);
    assert_eq!(f & (1 << features::RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut seg = [0u8; 4];
    dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    // Out of range reads leave the buffer alone.
    let mut b = [7u8; 4];
    dev.read_config(CONFIG_LEN as u64 - 2, &mut b);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [7; 4]);
    let ro = block(true);
    assert_ne!(ro.avail_features() & (1 << features::RO), 0);
    assert_eq!(ro.avail_features() & (1 << features::DISCARD), 0);
    assert_eq!(dev.device_type(), device_type::BLOCK);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
}

#[test]
fn write_read_flush_get_id() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false, false);
    // OUT: two segments, sectors 3..=4.
    let (hdr, st_out) = header(&mem, 0, req_type::OUT, 3);
    mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    mem.write_slice(&[0xbb; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    rig.push(&[
        (hdr, 16, R),
        (DATA, 512, R),
        (DATA + 0x1000, 512, R),
        (st_out, 1, W),
    ]);
    // IN: sectors 2..=5 in one 2 KiB buffer.
    let (hdr, st_in) = header(&mem, 1, req_type::IN, 2);
    rig.push(&[(hdr, 16, R), (DATA + 0x4000, 2048, W), (st_in, 1, W)]);
    // FLUSH, GET_ID (id split over two buffers).
    let (hdr, st_flush) = header(&mem, 2, req_type::FLUSH, 0);
    rig.push(&[(hdr, 16, R), (st_flush, 1, W)]);
    let (hdr, st_id) = header(&mem, 3, req_type::GET_ID, 0);
    rig.push(&[
        (hdr, 16, R),
        (DATA + 0x8000, 8, W),
        (DATA + 0x9000, 64, W),
        (st_id, 1, W),
    ]);

    rig.dev.process_queue();
    assert_eq!(used_idx(&rig.vq), 4);
    assert_eq!(used(&rig.vq, 0), (0, 1));
    assert_eq!(used(&rig.vq, 1), (4, 2048 + 1));
    assert_eq!(used(&rig.vq, 2), (7, 1));
    assert_eq!(used(&rig.vq, 3), (9, 20 + 1));
    for st in [st_out, st_in, st_flush, st_id] {
        assert_eq!(status_at(&mem, st), req_status::OK);
    }
    let mut got = [0u8; 2048];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x4000))
        .unwrap();
    assert_eq!(got[..512], [2; 512]);
    assert_eq!(got[512..1024], [0xaa; 512]);
    assert_eq!(got[1024..1536], [0xbb; 512]);
    assert_eq!(got[1536..], [5; 512]);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id[..8], GuestAddress(DATA + 0x8000))
        .unwrap();
    mem.read_slice(&mut id[8..], GuestAddress(DATA + 0x9000))
        .unwrap();
    assert_eq!(&id, b"cairn-root-drive-wit");
    let stats = rig.dev.stats();
    assert_eq!(
        (
            stats.write_count,
            stats.write_bytes,
            stats.read_count,
            stats.read_bytes
        ),
        (1, 1024, 1, 2048)
    );
    assert_eq!((stats.flush_count, stats.execute_fails), (1, 0));
    assert!(rig.irq.status() & crate::virtio::VIRTIO_MMIO_INT_VRING != 0);
    assert_eq!(
        rig.irq.eventfd().read().unwrap(),
        1,
        "one interrupt for the batch"
    );
}

#[test]
fn reads_dirty_guest_pages() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false, false);
    let page = (DATA + 0x3000) as usize;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let (hdr, status) = header(&mem, 0, req_type::IN, 1);
    assert!(!region.bitmap().dirty_at(page));
    rig.push(&[(hdr, 16, R), (DATA + 0x3000, 512, W), (status, 1, W)]);
    rig.dev.process_queue();
    assert!(
        region.bitmap().dirty_at(page),
        "the device's write is in the dirty bitmap"
    );
}

#[test]
fn discard_and_write_zeroes() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false, false);
    let range = |sector: u64, count: u32, flags: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&count.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        r
    };
    let (hdr, st_d) = header(&mem, 0, req_type::DISCARD, 0);
    mem.write_slice(&range(1, 2, 0), GuestAddress(DATA))
        .unwrap();
    mem.write_slice(&range(10, 1, 0), GuestAddress(DATA + 16))
        .unwrap();
    rig.push(&[(hdr, 16, R), (DATA, 32, R), (st_d, 1, W)]);
    let (hdr, st_z) = header(&mem, 1, req_type::WRITE_ZEROES, 0);
    mem.write_slice(&range(20, 1, 1), GuestAddress(DATA + 0x100))
        .unwrap();
    rig.push(&[(hdr, 16, R), (DATA + 0x100, 16, R), (st_z, 1, W)]);
    // Discard with the unmap flag is unsupported; a range past the end is an error.
    let (hdr, st_flag) = header(&mem, 2, req_type::DISCARD, 0);
    mem.write_slice(&range(1, 1, 1), GuestAddress(DATA + 0x200))
        .unwrap();
    rig.push(&[(hdr, 16, R), (DATA + 0x200, 16, R), (st_flag, 1, W)]);
    let (hdr, st_end) = header(&mem, 3, req_type::DISCARD, 0);
    mem.write_slice(&range(DISK_SECTORS - 1, 2, 0), GuestAddress(DATA + 0x300))
        .unwrap();
    rig.push(&[(hdr, 16, R), (DATA + 0x300, 16, R), (st_end, 1, W)]);
    let (hdr, st_len) = header(&mem, 4, req_type::DISCARD, 0);
    rig.push(&[(hdr, 16, R), (DATA + 0x300, 15, R), (st_len, 1, W)]);
    let st_next = rig.push_read(5, 0);
    rig.dev.process_queue();
    assert_eq!(used_idx(&rig.vq), 6);
    assert_eq!(status_at(&mem, st_d), req_status::OK);
    assert_eq!(status_at(&mem, st_z), req_status::OK);
    assert_eq!(status_at(&mem, st_flag), req_status::UNSUPP);
    assert_eq!(status_at(&mem, st_end), req_status::IOERR);
    assert_eq!(status_at(&mem, st_len), req_status::IOERR);
    assert_eq!(status_at(&mem, st_next), req_status::OK);
    // Check the disk through reads.
    let mut rig2_reads = Vec::new();
    for (slot, sector) in [(10u64, 0u64), (11, 1), (12, 2), (13, 3), (14, 10), (15, 20)] {
        rig2_reads.push((rig.push_read(slot, sector), slot, sector));
    }
    rig.dev.process_queue();
    for (st, slot, sector) in rig2_reads {
        assert_eq!(status_at(&mem, st), req_status::OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA + slot * 0x1000))
            .unwrap();
        let want = if [1, 2, 10, 20].contains(&sector) {
            0
        } else {
            sector as u8
        };
        assert_eq!(got, [want; 512], "sector {sector}");
    }
}

#[test]
fn read_only_refuses_writes() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, true, false);
    let (hdr, st_out) = header(&mem, 0, req_type::OUT, 0);
    rig.push(&[(hdr, 16, R), (DATA, 512, R), (st_out, 1, W)]);
    let (hdr, st_d) = header(&mem, 1, req_type::DISCARD, 0);
    rig.push(&[(hdr, 16, R), (DATA + 0x100, 16, R), (st_d, 1, W)]);
    let (hdr, st_f) = header(&mem, 2, req_type::FLUSH, 0);
    rig.push(&[(hdr, 16, R), (st_f, 1, W)]);
    let st_in = rig.push_read(3, 7);
    rig.dev.process_queue();
    assert_eq!(status_at(&mem, st_out), req_status::IOERR);
    assert_eq!(status_at(&mem, st_d), req_status::IOERR);
    assert_eq!(status_at(&mem, st_f), req_status::OK);
    assert_eq!(status_at(&mem, st_in), req_status::OK);
    let mut got = [0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(got, [7; 512]);
    let stats = rig.dev.stats();
    assert_eq!(
        (stats.execute_fails, stats.write_count, stats.read_count),
        (2, 0, 1)
    );
}

/// Each malformed chain is completed (with IOERR/UNSUPP where a status byte exists), and the
/// valid read queued right after it is served.
#[test]
fn malformed_chains_fail_and_device_keeps_serving() {
    type Build = fn(&mut Rig, u64, u64) -> Option<u8>;
    let cases: &[(&str, Build)] = &[
        ("data outside RAM", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (0xffff_0000_0000, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("data straddling the end of RAM", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (MEM_SIZE - 256, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("header outside RAM", |rig, _hdr, st| {
            rig.push(&[(MEM_SIZE, 16, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("status outside RAM", |rig, hdr, _st| {
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (MEM_SIZE + 1, 1, W)]);
            None
        }),
        ("descriptor loop", |rig, hdr, st| {
            let n = rig.next_desc;
            let _ = st;
            rig.push_raw(&[desc(hdr, 16, R | NEXT, n + 1), desc(DATA, 512, W | NEXT, n)]);
            None
        }),
        ("next index past the table", |rig, hdr, _st| {
            rig.push_raw(&[desc(hdr, 16, R | NEXT, QUEUE_SIZE + 5)]);
            None
        }),
        ("IN with device-readable data", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 512, R), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("OUT with device-writable data", |rig, _hdr, st| {
            let (hdr, _) = header(rig.mem, 40, req_type::OUT, 0);
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("writable header", |rig, hdr, st| {
            rig.push(&[(hdr, 16, W), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("short header", |rig, hdr, st| {
            rig.push(&[(hdr, 8, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("read-only status", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 1, R)]);
            None
        }),
        ("empty status", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 0, W)]);
            None
        }),
        ("status only", |rig, _hdr, st| {
            rig.push(&[(st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("absurd length", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 0xffff_fe00, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("zero-length data", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 0, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("no data", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("length not a sector multiple", |rig, hdr, st| {
            rig.push(&[(hdr, 16, R), (DATA, 100, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("sector past the end", |rig, _hdr, st| {
            let (hdr, _) = header(rig.mem, 40, req_type::IN, DISK_SECTORS);
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("range running past the end", |rig, _hdr, st| {
            let (hdr, _) = header(rig.mem, 40, req_type::IN, DISK_SECTORS - 1);
            rig.push(&[(hdr, 16, R), (DATA, 1024, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("sector overflowing u64", |rig, _hdr, st| {
            let (hdr, _) = header(rig.mem, 40, req_type::IN, u64::MAX);
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::IOERR)
        }),
        ("too many segments", |rig, hdr, st| {
            let mut parts = vec![(hdr, 16, R)];
            parts.extend((0..SEG_MAX as u64 + 1).map(|i| (DATA + i * 512, 512, W)));
            parts.push((st, 1, W));
            rig.push(&parts);
            None
        }),
        ("unknown request type", |rig, _hdr, st| {
            let (hdr, _) = header(rig.mem, 40, 99, 0);
            rig.push(&[(hdr, 16, R), (DATA, 512, W), (st, 1, W)]);
            Some(req_status::UNSUPP)
        }),
    ];
    for (name, build) in cases {
        let mem = guest_mem();
        let mut rig = Rig::new(&mem, false, false);
        let (hdr, st) = header(&mem, 0, req_type::IN, 0);
        let expected = build(&mut rig, hdr, st);
        let st_next = rig.push_read(1, 9);
        rig.dev.process_queue();
        assert_eq!(used_idx(&rig.vq), 2, "{name}: both chains returned");
        let (_, len) = used(&rig.vq, 0);
        match expected {
            Some(s) => {
                assert_eq!(status_at(&mem, st), s, "{name}: status");
                assert_eq!(len, 1, "{name}: used length");
            }
            None => {
                assert_eq!(status_at(&mem, st), 0xff, "{name}: status untouched");
                assert_eq!(len, 0, "{name}: used length");
            }
        }
        assert_eq!(
            status_at(&mem, st_next),
            req_status::OK,
            "{name}: next request"
        );
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, [9; 512], "{name}: next request's data");
    }
}

#[test]
fn large_request_moves_through_bounce_buffer() {
    // A 256 KiB write and read back, larger than the bounce buffer.
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(1 << 20);
    let mut dev = Block::new(BlockConfig::default(), Box::new(disk)).unwrap();
    let (ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
    dev.activate(ctx).unwrap();
    let len = 256 * 1024u32;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0x28_0000)).unwrap();
    let (hdr, st) = header(&mem, 0, req_type::OUT, 8);
    vq.add_desc_chains(
        &chain(0, &[(hdr, 16, R), (0x28_0000, len, R), (st, 1, W)]),
        0,
    )
    .unwrap();
    let (hdr2, st2) = header(&mem, 1, req_type::IN, 8);
    vq.add_desc_chains(
        &chain(3, &[(hdr2, 16, R), (0x30_0000, len, W), (st2, 1, W)]),
        3,
    )
    .unwrap();
    dev.process_queue();
    assert_eq!(status_at(&mem, st), req_status::OK);
    assert_eq!(status_at(&mem, st2), req_status::OK);
    let mut got = vec![0u8; len as usize];
    mem.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
    assert!(got == pattern);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false, true);
    // used_event = 5: the driver wants an interrupt only once used idx passes 5.
    let used_event = rig.vq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
    rig.push_read(0, 0);
    rig.dev.process_queue();
    assert_eq!(used_idx(&rig.vq), 1);
    assert!(
        rig.irq.eventfd().read().is_err(),
        "no interrupt before used_event"
    );
    for slot in 1..6 {
        rig.push_read(slot, 0);
    }
    rig.dev.process_queue();
    assert_eq!(used_idx(&rig.vq), 6);
    assert_eq!(rig.irq.eventfd().read().unwrap(), 1);
    // The device published avail_event so the driver knows when to kick.
    let avail_event = rig.vq.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 6);
}

#[test]
fn inactive_device_does_nothing_and_rejects_bad_activation() {
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let mut dev = block(false);
    dev.process_queue();
    let (mut ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
    ctx.queues.push(vq.create_queue().unwrap());
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 2
        })
    ));
    assert!(!dev.is_activated());
}

#[test]
fn event_handler_serves_queue_and_follows_reset() {
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let dev = Arc::new(Mutex::new(block(false)));
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(dev.clone());

    // A request queued before activation is served when the activation event is handled.
    let (hdr, st0) = header(&mem, 0, req_type::IN, 4);
    vq.add_desc_chains(&chain(0, &[(hdr, 16, R), (DATA, 512, W), (st0, 1, W)]), 0)
        .unwrap();
    let (ctx, evt, _irq) = activate_ctx(&mem, &vq, false);
    dev.lock().unwrap().activate(ctx).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(status_at(&mem, st0), req_status::OK);
    assert_eq!(dev.lock().unwrap().registered.len(), 1);

    // Then a kick serves the next one.
    let (hdr, st1) = header(&mem, 1, req_type::IN, 5);
    vq.add_desc_chains(&chain(3, &[(hdr, 16, R), (DATA, 512, W), (st1, 1, W)]), 3)
        .unwrap();
    evt.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(status_at(&mem, st1), req_status::OK);
    assert_eq!(used_idx(&vq), 2);

    // Reset: the queue eventfd is dropped from the loop; kicks are ignored.
    assert!(dev.lock().unwrap().reset());
    em.run_with_timeout(100).unwrap();
    assert!(dev.lock().unwrap().registered.is_empty());
    evt.write(1).unwrap();
    assert_eq!(em.run_with_timeout(10).unwrap(), 0);
}

#[test]
fn persist_round_trip() {
    let mut dev = block(false);
    dev.set_acked_features(dev.avail_features() | (1 << 60));
    let state = dev.save().unwrap();
    assert_eq!(
        state.acked_features,
        dev.avail_features(),
        "only offered features stick"
    );
    let backend = MemDisk::new((DISK_SECTORS * SECTOR_SIZE) as usize);
    let restored = Block::restore(
        BlockConstructorArgs {
            backend: Box::new(backend),
        },
        &state,
    )
    .unwrap();
    assert_eq!(restored.save().unwrap(), state);
    assert!(!restored.is_activated());

    let err = Block::restore(
        BlockConstructorArgs {
            backend: Box::new(MemDisk::new(512)),
        },
        &state,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        BlockError::DiskSizeChanged {
            expected: 32768,
            found: 512
        }
    ));
    // The state is plain serde data.
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<BlockState>(&json).unwrap(), state);
}

#[test]
fn open_raw_file() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.as_file().set_len(4096 + 100).unwrap();
    let dev = Block::open(BlockConfig {
        drive_id: "d".into(),
        path: tmp.path().into(),
        read_only: true,
    })
    .unwrap();
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8, "partial last sector hidden");
    assert!(matches!(
        Block::open(BlockConfig {
            path: "/nonexistent/disk.img".into(),
            ..Default::default()
        }),
        Err(BlockError::Open { .. })
    ));
}

use super::super::persist::BlockState;

/// The whole stack: a driver brings the device up through the MMIO registers, a kick reaches the
/// event loop, and after save/restore of transport and device the restored pair serves the
/// next request where the old one left off.
#[test]
fn through_mmio_transport_with_save_and_restore() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::{
        status::*, MmioTransport, MmioTransportConstructorArgs, NOTIFY_REG_OFFSET,
    };

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let dev = Arc::new(Mutex::new(block(false)));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(dev.clone());

    wr(&mut t, 0x70, ACKNOWLEDGE);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1); // VERSION_1
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    wr(&mut t, 0x38, u32::from(QUEUE_SIZE));
    wr(&mut t, 0x80, vq.desc_table_addr().0 as u32);
    wr(&mut t, 0x90, vq.avail_addr().0 as u32);
    wr(&mut t, 0xa0, vq.used_addr().0 as u32);
    wr(&mut t, 0x44, 1);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(dev.lock().unwrap().is_activated());
    em.run_with_timeout(100).unwrap();

    let (hdr, st0) = header(&mem, 0, req_type::IN, 6);
    vq.add_desc_chains(&chain(0, &[(hdr, 16, R), (DATA, 512, W), (st0, 1, W)]), 0)
        .unwrap();
    // No ioeventfd here: the transport signals the queue eventfd itself.
    wr(&mut t, NOTIFY_REG_OFFSET, 0);
    em.run_with_timeout(100).unwrap();
    assert_eq!(status_at(&mem, st0), req_status::OK);
    assert_eq!(used_idx(&vq), 1);

    // Checkpoint, then rebuild both from their states on the same memory.
    let t_state = t.save().unwrap();
    let b_state = dev.lock().unwrap().save().unwrap();
    assert_eq!(t_state.queues[0].next_avail, 1);
    let disk = MemDisk::new((DISK_SECTORS * SECTOR_SIZE) as usize);
    let dev2 = Arc::new(Mutex::new(
        Block::restore(
            BlockConstructorArgs {
                backend: Box::new(disk),
            },
            &b_state,
        )
        .unwrap(),
    ));
    let mut t2 = MmioTransport::restore(
        MmioTransportConstructorArgs {
            mem: mem.clone(),
            device: dev2.clone(),
        },
        &t_state,
    )
    .unwrap();
    assert!(dev2.lock().unwrap().is_activated());
    assert_eq!(t2.save().unwrap(), t_state);
    let mut em2 = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em2.add_subscriber(dev2.clone());
    em2.run_with_timeout(100).unwrap();

    let (hdr, st1) = header(&mem, 1, req_type::GET_ID, 0);
    vq.add_desc_chains(&chain(3, &[(hdr, 16, R), (DATA, 20, W), (st1, 1, W)]), 3)
        .unwrap();
    wr(&mut t2, NOTIFY_REG_OFFSET, 0);
    em2.run_with_timeout(100).unwrap();
    assert_eq!(status_at(&mem, st1), req_status::OK);
    assert_eq!(used_idx(&vq), 2, "the restored queue went on from index 1");
    assert_eq!(used(&vq, 1), (3, 21));
}

/// Queue `n` 4 KiB reads on `vq` (descriptors from 0), activate `dev` through an event loop,
/// and count the requests served at once and in all by `deadline`. Returns (served at once,
/// served in all, time to serve all).
fn limited_reads(
    dev: Block,
    n: u16,
    deadline: std::time::Duration,
) -> (u16, u16, std::time::Duration) {
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    for i in 0..n {
        let (hdr, st) = header(&mem, u64::from(i), req_type::IN, 0);
        vq.add_desc_chains(
            &chain(i * 3, &[(hdr, 16, R), (DATA, 4096, W), (st, 1, W)]),
            i * 3,
        )
        .unwrap();
    }
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let (ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
    let start = std::time::Instant::now();
    dev.lock().unwrap().activate(ctx).unwrap();
    em.run_with_timeout(0).unwrap();
    let at_once = used_idx(&vq);
    while used_idx(&vq) < n && start.elapsed() < deadline {
        em.run_with_timeout(50).unwrap();
    }
    (at_once, used_idx(&vq), start.elapsed())
}

#[test]
fn rate_limited_throughput_is_bounded_and_unlimited_is_not() {
    use crate::rate_limiter::{BucketConfig, LimiterConfig};
    // 64 KiB per 100 ms (640 KiB/s); 64 reads of 4 KiB = 256 KiB: 16 at once from the full
    // bucket, the other 192 KiB take about 300 ms.
    let mut limited = block(false);
    limited
        .update_rate_limiter(&LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 64 << 10,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
            ops: None,
        })
        .unwrap();
    let (at_once, all, took) = limited_reads(limited, 64, std::time::Duration::from_secs(10));
    assert_eq!(at_once, 16, "a full bucket's worth at once");
    assert_eq!(all, 64, "every request is served in the end");
    assert!(took >= std::time::Duration::from_millis(280), "{took:?}");
    // Bytes over time never exceed the bucket plus what it earned.
    let bound = (64u128 << 10) + took.as_millis() * 640 * 1024 / 1000;
    assert!(64 * 4096 <= bound);

    let (at_once, all, took) = limited_reads(block(false), 64, std::time::Duration::from_secs(10));
    assert_eq!(
        (at_once, all),
        (64, 64),
        "unlimited: everything at once ({took:?})"
    );

    // An ops bucket of 10 per 100 ms: 10 at once.
    let mut ops = block(false);
    ops.update_rate_limiter(&LimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig {
            size: 10,
            one_time_burst: 5,
            refill_time_ms: 100,
        }),
    })
    .unwrap();
    let (at_once, all, took) = limited_reads(ops, 30, std::time::Duration::from_secs(10));
    assert_eq!((at_once, all), (15, 30), "10 plus a burst of 5 at once");
    assert!(took >= std::time::Duration::from_millis(140), "{took:?}");
}

#[test]
fn swap_disk_serves_the_new_file_and_signals_a_config_change() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false, false);
    let st = rig.push_read(0, 4);
    rig.dev.process_queue();
    assert_eq!(status_at(&mem, st), req_status::OK);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 4);
    rig.irq.ack(rig.irq.status());

    let mut disk = MemDisk::new(128 * SECTOR_SIZE as usize);
    disk.data.fill(0xab);
    rig.dev.swap_disk("/new.img".into(), Box::new(disk));
    assert_eq!(rig.dev.config().path, std::path::Path::new("/new.img"));
    let mut cap = [0u8; 8];
    rig.dev.read_config(0, &mut cap);
    assert_eq!(
        u64::from_le_bytes(cap),
        128,
        "capacity follows the new disk"
    );
    assert_eq!(
        rig.irq.status(),
        crate::virtio::VIRTIO_MMIO_INT_CONFIG,
        "config change raised"
    );
    let st = rig.push_read(1, 100);
    rig.dev.process_queue();
    assert_eq!(status_at(&mem, st), req_status::OK);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(DATA + 0x1000)).unwrap(),
        0xab
    );
    assert_eq!(rig.dev.save().unwrap().disk_len, 128 * SECTOR_SIZE);
}
