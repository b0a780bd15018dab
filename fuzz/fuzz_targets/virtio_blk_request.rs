//! Fuzz virtio-blk request handling end to end: the input becomes guest RAM (descriptor table,
//! available ring, headers, data and all), and an activated `Block` on an in-memory disk serves
//! the queue. Nothing here may panic, and the disk must keep its size.
//!
//! Input: byte 0 picks read-only (bit 0) and EVENT_IDX (bit 1); the rest is copied to guest
//! address 0. The queue (size 16) has its descriptor table at 0x0, available ring at 0x100 and
//! used ring at 0x200; guest RAM is 64 KiB, the disk 32 KiB.
#![no_main]

use std::sync::Arc;

use cairn_devices::virtio::block::{Block, BlockConfig, MemDisk};
use cairn_devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};
use cairn_devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 0x1_0000;
const DISK_SIZE: usize = 0x8000;
const QUEUE_SIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("fill guest memory");

    let config = BlockConfig {
        drive_id: "fuzz".into(),
        path: "/dev/null".into(),
        read_only: mode & 1 != 0,
    };
    let mut block = Block::new(config, Box::new(MemDisk::new(DISK_SIZE))).expect("block device");

    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x100), Some(0));
    queue.set_used_ring_address(Some(0x200), Some(0));
    queue.set_event_idx(mode & 2 != 0);
    queue.set_ready(true);
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        queue_evts: vec![EventFd::new(0).expect("eventfd")],
        interrupt: Arc::new(IrqTrigger::new().expect("irq")),
    };
    block.activate(ctx).expect("activate");
    block.process_queue();
    // A second pass sees the state the first left behind.
    block.process_queue();
    assert_eq!(block.queues()[0].max_size(), QUEUE_SIZE);
});
