//! Fuzz the virtio-mmio transport with a sequence of register accesses from a hostile driver,
//! in front of a virtio-blk device on an in-memory disk. Nothing here may panic.
//!
//! Input: a sequence of 7-byte operations `[op, offset_lo, offset_hi, v0, v1, v2, v3]`:
//! - `op % 8` 0..=3: read of 1, 2, 4 or 8 bytes at `offset % 0x1000`;
//! - 4..=6: write of 1, 4 or 8 bytes (the value, zero-extended);
//! - 7: `offset` even: write the value to guest RAM at `(offset * 4) % RAM`; odd: let the
//!   device serve its queue (what the event loop would do on a kick).
//!
//! Operations whose `op` has bit 3 set instead run a scripted valid bring-up (ACK, DRIVER,
//! features, FEATURES_OK, queue 0 at 0x1000/0x2000/0x3000, DRIVER_OK), so the fuzzer reaches
//! the activated states quickly.
#![no_main]

use std::sync::{Arc, Mutex};

use cairn_devices::bus::BusDevice;
use cairn_devices::virtio::block::{Block, BlockConfig, MemDisk};
use cairn_devices::virtio::mmio::MmioTransport;
use cairn_devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: u64 = 0x1_0000;

fn write32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn bring_up(t: &mut MmioTransport) {
    write32(t, 0x70, 0);
    write32(t, 0x70, 1);
    write32(t, 0x70, 3);
    write32(t, 0x24, 1);
    write32(t, 0x20, 1); // VERSION_1
    write32(t, 0x70, 0xb);
    write32(t, 0x30, 0);
    write32(t, 0x38, 16);
    write32(t, 0x80, 0x1000);
    write32(t, 0x90, 0x2000);
    write32(t, 0xa0, 0x3000);
    write32(t, 0x44, 1);
    write32(t, 0x70, 0xf);
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory");
    let block = Block::new(BlockConfig::default(), Box::new(MemDisk::new(0x4000))).expect("block");
    let block = Arc::new(Mutex::new(block));
    let mut t = MmioTransport::new(mem.clone(), block.clone()).expect("transport");

    for op in data.chunks_exact(7) {
        let kind = op[0];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let value = [op[3], op[4], op[5], op[6], 0, 0, 0, 0];
        if kind & 8 != 0 {
            bring_up(&mut t);
            continue;
        }
        let reg = offset % 0x1000;
        match kind % 8 {
            k @ 0..=3 => {
                let mut buf = [0u8; 8];
                t.read(reg, &mut buf[..1 << k]);
            }
            4 => t.write(reg, &value[..1]),
            5 => t.write(reg, &value[..4]),
            6 => t.write(reg, &value[..8]),
            _ if offset % 2 == 0 => {
                let addr = (offset * 4) % (MEM_SIZE - 4);
                mem.write_slice(&value[..4], GuestAddress(addr))
                    .expect("in range");
            }
            _ => block
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .process_queue(),
        }
    }
});
